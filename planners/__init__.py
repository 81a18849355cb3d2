"""Paragraph-level planning: paragraph structure, plan concepts and planners."""
from lcm.planners.paragraphs import Paragraph, group_by_similarity, group_fixed, is_section_header, split_paragraphs, structure
from lcm.planners.planner import ExtractivePlanner, MeanPlanner, Planner
from lcm.planners.planning import Planning

__all__ = ["ExtractivePlanner", "MeanPlanner", "Paragraph", "Planner", "Planning", "group_by_similarity", "group_fixed",
           "is_section_header", "split_paragraphs", "structure"]
