"""The runtimes a loaded model runs on, and how one is chosen.

base.py            the Runtime protocol every runtime implements
towers.py          the model's two towers as unit-vector modules (run and exported)
torch_runtime.py   eager torch: fp32, bf16, fp16, int8
onnx_export.py     both towers exported to ONNX once per model, cached on disk
onnx_runtime.py    ONNX Runtime sessions of the export
race.py            EMBED_BACKEND x EMBED_PRECISION resolved; `auto` races the options
"""
