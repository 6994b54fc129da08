"""MLflow's entry points into the project's SQLite store (pyproject.toml registers them).

MLflow loads every store plugin when `mlflow` is imported, in every process of the
virtualenv, a model server's too. A served model imports the copy of mnist_pipeline that
it carries in its `code/` folder, but Python hands out the first copy imported: if
`import mlflow` imported the repository's, the model would run today's code, not its own.
So this module lives outside the package, and imports the store
(mnist_pipeline/tracking/store.py) only when MLflow builds one.
"""


def tracking_store(store_uri: str, artifact_uri: str | None = None):
    from mnist_pipeline.tracking import store

    return store.tracking_store(store_uri, artifact_uri)


def rest_tracking_store(store_uri: str, artifact_uri: str | None = None):
    from mnist_pipeline.tracking import store

    return store.rest_tracking_store(store_uri, artifact_uri)


def registry_store(store_uri: str, tracking_uri: str | None = None):
    from mnist_pipeline.tracking import store

    return store.registry_store(store_uri, tracking_uri)
