"""Pulumi components of the delivery system, one module per component; no ML code here."""
