"""rasst: streaming speech-to-term retrieval for retrieval-augmented speech translation.

The installed packages, all under this namespace:

- ``rasst.v1``: the generated gRPC stubs of the ``rasst.v1`` wire contract (proto/);
- ``rasst.client``: sync and async clients, the hint merger, the reference translator and
  the glossary CLI; needs grpcio, protobuf and numpy only;
- ``rasst.retriever``: audio features, the dual encoder, glossaries, the index and the
  gRPC server (``rasst[server]``);
- ``rasst.training``: corpora, training, evaluation and benchmarks (``rasst[train]``).

``rasst.cli`` is the ``rasst`` command.
"""

__version__ = "0.1.0"
