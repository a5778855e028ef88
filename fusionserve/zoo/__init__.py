"""The fusion model zoo: synthetic data, tokenizer, encoders and fusion strategies, training,
and ONNX export into the model repository.

torch is imported only by `models`, `train` and `export` (and lazily by `cli`); `data` and
`tokenizer` are safe on serving hosts (numpy, Pillow, tokenizers).
"""
