"""`lcm embed -c CONFIG`: encode a config's corpus into the embedding cache and write its prepared store, without
training -- with several processes (`--data.encode_processes N`: one per GPU, or sharing the CPU cores).

A later `lcm fit -c CONFIG` (or `--data.store FOLDER`) then finds everything on disk. Interrupted runs resume:
finished cache shards are kept and only the rest is encoded.
"""
from __future__ import annotations

from lcm.errors import LCMError

USAGE = """usage: lcm embed -c CONFIG.yaml [--data.encode_processes N] [--data.KEY VALUE ...]

Encodes every sentence of the config's data into the embedding cache (data.cache_dir) and writes the prepared
store, as `lcm fit` would before training. N processes each load the encoder (one per GPU; on CPU they share
the cores); the stored vectors do not depend on N."""


def main(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    from lcm.train.cli import make_cli
    from lcm.train.datamodule import ConceptDataModule

    data = make_cli(args, run=False).datamodule
    if not isinstance(data, ConceptDataModule):
        raise LCMError(f"lcm embed: the config's data ({type(data).__name__}) encodes no sentences")
    if data.store is not None:
        raise LCMError(f"lcm embed: data.store {data.store} is already a prepared store; nothing to encode")
    corpus = data.corpus
    stats = corpus.stats
    seconds = stats.get("encode_seconds", 0.0)
    rate = f"{stats['encoded'] / seconds:,.0f} sentences/s" if stats["encoded"] and seconds else "nothing to encode"
    print(f"embedded {stats['sentences']} unique sentences ({stats['encoded']} encoded now with "
          f"{data.encode_processes} process(es) in {seconds:.1f} s: {rate}; {stats['cached']} from cache)\n"
          f"prepared store: {corpus.folder}")
