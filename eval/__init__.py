"""Evaluation harness for zs_llm: math sets, prompts, grading; run as `python -m eval`."""
