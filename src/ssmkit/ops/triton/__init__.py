"""Triton kernels of the ops (GPU; Triton's CPU interpreter under ``TRITON_INTERPRET=1`` for tests).

Imported only by :mod:`ssmkit.ops.triton_gate`, after it has checked that Triton can run on the device; this
package imports ``triton`` at its top.

    scan.py   the diagonal LTI scan fused with its output contraction, forward and backward
    ssd.py    the chunked SSD scan of Mamba-2
    selective.py  the selective scan of Mamba-1 (softplus, skip and gate fused), forward and backward
"""
