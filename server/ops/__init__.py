"""What operators and analysts build or download: the kernel image (offline), the
bubblewrap kernel environment, and the client wheel served at ``GET /client``.

May import: kernels (the Docker engine client), config, errors, and the kernel package
(``dataexec_kernel``) that it builds into images and wheels.
"""
