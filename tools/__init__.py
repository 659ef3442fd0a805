"""Developer tools run from the Makefile and the tests: the demo, process helpers, the image harness."""
