import requests, pytest
from tests.conftest import EXAMPLE_SPECS
@pytest.mark.parametrize("key", ["churn", "diabetes"])
def test_quick(served_example, key):
    ex = served_example(key)
    import mlflow; from model.train import load_heldout
    h = load_heldout(ex.result.run_id, tracking_uri=None or ex.result.model_uri and __import__("os").environ.get("X"))  if False else None
    print(ex.result.metrics, ex.context.image_name, ex.context.image_tag)
    rows = [{"plan":"basic","region":"north","tenure_months":3,"autopay":False,"monthly_spend":30.5}] if key=="churn" else [{c: 0.01 for c in ["age","sex","bmi","bp","s1","s2","s3","s4","s5","s6"]}]
    r = requests.post(ex.url+"/predict", json={"rows": rows}); print(r.status_code, r.text)
    r = requests.post(ex.url+"/predict_proba", json={"rows": rows}); print(r.status_code, r.text)
    r = requests.post(ex.url+"/predict", json={"rows": [dict(rows[0], plan="gold")]}); print(r.status_code, r.text[:300])
