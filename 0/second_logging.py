"""second_logging: train a scikit-learn classifier on the iris flowers and log it with MLflow.

Logs the params of the model and the split, the test `accuracy` and `f1_macro`, and the
model itself (name "model", with its signature and an input example), registered as
`quickstart-iris` so that third_serving.md can serve `models:/quickstart-iris/latest`.
Iris ships with scikit-learn, so nothing is downloaded.

$ python 0/second_logging.py
"""

import sys

import mlflow
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

EXPERIMENT_NAME = "quickstart"
REGISTERED_MODEL_NAME = "quickstart-iris"
TEST_SIZE = 0.25
SEED = 42
# Plain column names keep the JSON of a request to the served model easy to type.
COLUMN_NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def main() -> int:
    iris = load_iris(as_frame=True)
    features = iris.data.set_axis(COLUMN_NAMES, axis="columns")
    train_features, test_features, train_labels, test_labels = train_test_split(
        features, iris.target, test_size=TEST_SIZE, random_state=SEED, stratify=iris.target
    )
    model = LogisticRegression(C=1.0, max_iter=500)

    mlflow.set_experiment(EXPERIMENT_NAME)
    with mlflow.start_run(run_name="iris-logistic-regression") as run:
        mlflow.set_tag("stage", "quickstart")
        mlflow.log_params({"C": model.C, "max_iter": model.max_iter})
        mlflow.log_params({"test_size": TEST_SIZE, "seed": SEED})
        model.fit(train_features, train_labels)
        predictions = model.predict(test_features)
        mlflow.log_metrics(
            {
                "accuracy": accuracy_score(test_labels, predictions),
                "f1_macro": f1_score(test_labels, predictions, average="macro"),
            }
        )
        # The signature tells the scoring server which columns and types to expect;
        # the input example is what the UI and `mlflow models serve` docs show to callers.
        signature = infer_signature(test_features, predictions)
        model_info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=test_features.head(3),
            registered_model_name=REGISTERED_MODEL_NAME,
        )

    print(f"Run ID: {run.info.run_id}")
    print(f"Logged model URI: {model_info.model_uri}")
    print(f"Model URI to serve: models:/{REGISTERED_MODEL_NAME}/latest")
    print(
        f"Serve it: mlflow models serve -m models:/{REGISTERED_MODEL_NAME}/latest"
        " --env-manager local -p 5000"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
