"""Start a warm kernel: heavy imports first, then the ipykernel application.

The server counts a kernel as ready when it answers ``kernel_info``, which only happens
after these imports, so no session ever waits for pandas.
"""

import logging
import sys

from dataexec_kernel import fontcache


def main() -> None:
    # A kernel's first chart reads the font list seeded here; where there is no seed, it
    # scans the fonts (in its own /tmp), and the notice it logs would end up in the
    # analyst's outputs.
    fontcache.seed()
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    import numpy  # noqa: F401  (warm-up: most of a cold start is these imports)
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401
    from ipykernel.kernelapp import IPKernelApp
    from traitlets.config import Config

    config = Config()
    config.IPKernelApp.exec_lines = [
        "import numpy as np",
        "import pandas as pd",
        "%load_ext dataexec_kernel",
    ]
    config.HistoryManager.enabled = False
    config.InteractiveShell.colors = "nocolor"
    config.IPKernelApp.quiet = True
    # ipykernel sleeps 0.5 ms before each reply, for clients that stop reading at the reply;
    # the server reads until the idle status, which comes after every output (see flushes).
    config.IPythonKernel._execute_sleep = 0.0
    app = IPKernelApp.instance(config=config)
    app.initialize(sys.argv[1:])
    if "matplotlib.pyplot" in sys.modules:
        # Imported before the shell existed (a zygote's kernel): the inline backend found
        # no shell to show figures in, so hook it up now.
        app.shell.run_line_magic("matplotlib", "inline")
    from dataexec_kernel import flushes, threads

    threads.install()  # after initialize: the kernel's own threads are running
    flushes.install()
    app.start()


if __name__ == "__main__":
    main()
