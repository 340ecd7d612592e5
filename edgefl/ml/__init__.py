"""Machine learning on the edge: the feature extractor (exported as ONNX and TFLite
from one set of weights) and its runtime backends, differential privacy
(normalisation, secure Laplace noise, the ε accountant), the fog's deterministic
dense-layer trainer, and data sets."""

from edgefl._faces import faces

__all__, __getattr__, __dir__ = faces(__name__, {
    "extractor": ["ExtractorWeights", "WeightsError", "FEATURES"],
    "export": ["ModelRelease", "ModelError", "ModelHashMismatch", "FORMATS"],
    "backends": ["Backend", "BackendUnavailable", "open_backend"],
    "device": ["FeatureBatch", "FeatureExtractor"],
    "privacy": ["PrivacyAccountant", "PrivacyError", "BudgetExceeded", "Privatiser", "normalise", "mechanism"],
    "trainer": ["DenseModel", "TrainConfig", "TrainState", "TrainError", "init_state", "replay_step"],
    "data": ["Dataset", "DataError", "load_dataset", "load_mnist", "synthetic_digits"],
})
