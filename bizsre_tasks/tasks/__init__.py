"""The task side: documents, prompts, scoring and the generation of the task YAMLs (in `bizsre_tasks/yaml/`)."""
