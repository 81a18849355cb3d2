"""Paragraph-level structure of reasoning (segmentation now; plan concepts build on it)."""
from lcm.planners.paragraphs import is_section_header, split_paragraphs

__all__ = ["is_section_header", "split_paragraphs"]
