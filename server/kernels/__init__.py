"""Kernels: sandboxes (zygote, bubblewrap, Docker, none), warm pools, the kernel client.

Owns starting a confined kernel, its per-kernel directory, talking Jupyter to it over
ZMQ ipc, every way a cell can fail (timeout, memory, output, death), and the pools of
warm kernels. Nothing above knows which sandbox runs a kernel.

May import: config, errors, and the kernel protocol. Never HTTP, sessions or data.
"""
