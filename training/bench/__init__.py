"""``rasst bench``: latency, load, index scaling, RPC overhead and ASR baselines, side by side.

Every figure is measured in the same run on the same machine; medians of several
repeats; the device is named beside GPU figures. Output: ``bench.json``, a markdown
table (``bench.md``) and PNG plots in ``--out``. One module per benchmark; ``cli.py``
runs them.
"""
