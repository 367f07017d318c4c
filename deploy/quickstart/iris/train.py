"""A tiny real training job: fits a scikit-learn classifier on the iris data set and saves it
where the target asks (MLGW_OUTPUT_DIR locally, SM_MODEL_DIR on SageMaker)."""

import json
import os

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

out = os.environ.get("MLGW_OUTPUT_DIR") or os.environ.get("SM_MODEL_DIR", ".")
c = float(os.environ.get("MLGW_HP_C", "1.0"))

X, y = load_iris(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
print(f"training LogisticRegression(C={c}) on {len(X_train)} rows", flush=True)
model = LogisticRegression(C=c, max_iter=500).fit(X_train, y_train)
accuracy = model.score(X_test, y_test)
print(f"test accuracy {accuracy:.3f}", flush=True)
joblib.dump(model, os.path.join(out, "model.joblib"))
with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump({"accuracy": accuracy}, f)
print(f"saved model to {out}", flush=True)
