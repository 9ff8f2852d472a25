"""The package that lives inside every DataExec kernel.

It warms the kernel (``python -m dataexec_kernel`` imports pandas, numpy and pyarrow before
the kernel answers), and, loaded as an IPython extension, captures each cell's result for
the server: ``result_df`` if the cell set it, else the value of its last expression.

Importing this package stays cheap: the server copies it into kernels without importing
anything heavy.
"""

__version__ = "0.1.0"


def load_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """Hook result capture and the in-kernel helpers into a running IPython."""
    from dataexec_kernel.extension import install

    install(ipython)
