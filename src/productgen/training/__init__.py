"""The one training engine every productgen model uses: device and precision, GPU-resident data, EMA,
complete checkpoints with exact resume, DDP through ``torchrun``, progress bars and sample grids.

Imports only torch, numpy, pillow and safetensors, so it runs on a bare GPU machine.
"""
