"""Problems: the record, loaders for public data sets, and the synthetic generator."""

from cotdistill.problems.arithmetic import asdiv_answer, read_asdiv, read_multiarith, read_svamp
from cotdistill.problems.gsm8k import load_gsm8k_hub, parse_solution, read_gsm8k, read_gsm8k_subquestions
from cotdistill.problems.loaders import (
    DATA_DIR_ENV,
    DATASET_NAMES,
    dataset_splits,
    load_problems,
    resolve_data_dir,
)
from cotdistill.problems.reasoning import BBH_TASKS, bbh_cot_prompt, read_bbh_task, read_strategyqa
from cotdistill.problems.record import Problem, Step
from cotdistill.problems.synthetic import (
    DEFAULT_TEMPLATES,
    Item,
    OpPhrase,
    SyntheticSpec,
    Template,
    generate_problems,
    split_problems,
)
from cotdistill.problems.traces import TraceLoad, read_problem_file, read_traces

__all__ = [
    "BBH_TASKS",
    "DATASET_NAMES",
    "DATA_DIR_ENV",
    "DEFAULT_TEMPLATES",
    "Item",
    "OpPhrase",
    "Problem",
    "Step",
    "SyntheticSpec",
    "Template",
    "TraceLoad",
    "asdiv_answer",
    "bbh_cot_prompt",
    "dataset_splits",
    "generate_problems",
    "load_gsm8k_hub",
    "load_problems",
    "parse_solution",
    "read_asdiv",
    "read_bbh_task",
    "read_gsm8k",
    "read_gsm8k_subquestions",
    "read_multiarith",
    "read_problem_file",
    "read_strategyqa",
    "read_svamp",
    "read_traces",
    "resolve_data_dir",
    "split_problems",
]
