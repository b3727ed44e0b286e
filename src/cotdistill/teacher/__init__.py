"""The teacher room: backends (OpenAI-compatible HTTP, local Hugging Face, trace files), prompts, the
append-only sample cache, grading against gold, and the resumable builder that ties them together."""
