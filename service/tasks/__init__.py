"""Task logic between the HTTP layer and onnxruntime: pre/post-processing, decoding, sampling."""
