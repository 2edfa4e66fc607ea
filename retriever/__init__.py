"""rasst retriever: audio features, the dual encoder, glossaries, the index and the gRPC server."""
