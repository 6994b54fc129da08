"""The served model, logged from code: the Keras CNN behind the very transform training saw.

package_model.py logs this file with `mlflow.pyfunc.log_model(python_model=<this file>)`,
the Keras model and `transform.json` as artifacts, and the serving modules as code. Whatever
a client sends (see request_formats.py, and picture_to_pixels.py for image files) becomes
pixels, is normalised by transform.normalize with the preprocess run's mean and std, and is
classified.
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from mnist_pipeline.data.transform import IMAGE_SHAPE, TransformSpec, normalize
from mnist_pipeline.errors import UserError
from mnist_pipeline.serving.request_formats import (
    answer,
    detailed_answer,
    pixels_from_request,
)


class ImageClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import keras
        import tensorflow as tf

        self.spec = TransformSpec.load(context.artifacts["transform"])
        model = keras.saving.load_model(context.artifacts["keras_model"], compile=False)
        # keras.Model.predict builds a data pipeline on every call (tens of ms); a traced
        # call with a fixed signature answers one image in well under a millisecond.
        self._forward = tf.function(
            lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE, 1], tf.float32)],
        )
        self._forward(np.zeros((1, 28, 28, 1), dtype=np.float32))

    def predict(self, context, model_input, params=None):
        try:
            pixels = pixels_from_request(model_input, self.spec)
        except UserError as error:
            # INVALID_PARAMETER_VALUE makes the scoring server answer 400 without a traceback.
            raise MlflowException.invalid_parameter_value(str(error)) from None
        probabilities = self._forward(normalize(pixels, self.spec)).numpy()
        if params and params.get("details"):
            # The drawing page asks for the three likeliest classes and the 28x28 image
            # this very code made, so that it never needs a second copy of the transform.
            return detailed_answer(probabilities, self.spec.class_names, pixels)
        return answer(probabilities, self.spec.class_names)


mlflow.models.set_model(ImageClassifier())
