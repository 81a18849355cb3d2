"""Data and the `lcm fit` entry point: corpus builders, segmentation, DataModule, callbacks."""
from lcm.train.corpus import CorpusSource, DatasetSource, GsmSymbolic
from lcm.train.datamodule import ConceptDataModule
from lcm.train.documents import Document
from lcm.train.forks import Forks
from lcm.train.logic import LogicChains
from lcm.train.sentences import SentenceDataModule
from lcm.train.token_data import TokenDataModule

__all__ = ["ConceptDataModule", "CorpusSource", "DatasetSource", "Document", "Forks", "GsmSymbolic", "LogicChains",
           "SentenceDataModule", "TokenDataModule"]
