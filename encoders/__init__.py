"""Frozen sentence encoders and the on-disk embedding cache."""
from lcm.encoders.autoencoder import AutoencoderEncoder
from lcm.encoders.base import Encoder, encoder_from_config
from lcm.encoders.cache import EmbeddingCache
from lcm.encoders.sentence_transformer import SentenceTransformerEncoder
from lcm.encoders.sonar import SonarEncoder

__all__ = ["AutoencoderEncoder", "Encoder", "EmbeddingCache", "SentenceTransformerEncoder", "SonarEncoder", "encoder_from_config"]
