"""Machine learning on the edge: the feature extractor (exported as ONNX and TFLite
from one set of weights) and its runtime backends, differential privacy
(normalisation, secure Laplace noise, the ε accountant), the fog's deterministic
dense-layer trainer, and data sets."""
