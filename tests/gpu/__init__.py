"""Tests that need CUDA (marker `gpu`): `make test-gpu` or `tools/gpu_check.sh` run them; `make test`
leaves them out, and tests/conftest.py skips them on a machine without a GPU.

- `test_backbones_cuda`: every backbone's logits and gradients on CUDA against CPU's. Needs only
  torch (no torchrec, no fbgemm_gpu), so it runs on a machine with nothing but a CUDA torch.
- `test_torchrec_cuda`: training, UVM-cached tables and checkpoints through TorchRec on CUDA; skipped
  (naming what is missing) where torchrec or fbgemm_gpu's CUDA ops are not installed.

`GPU_TESTS_DEVICE=cpu python -m pytest --noconftest -m gpu tests/gpu` runs the same code with CPU
standing in for the GPU (CPU against CPU: it checks the tests' plumbing, not the GPU).
"""
