"""seqstream's pure statistics: always-valid inference for online experiments (no Kafka here)."""

from .arms import ArmStats
from .batch import evaluate, parse_request
from .config import EngineConfig, MetricConfig
from .errors import InvalidInput
from .experiment import ExperimentState
from .observation import Observation, parse_observation, parse_timestamp
from .results import ROW_COLUMNS, SES_COLUMNS, Alert, IntervalResult, SrmStatus
from .sequential import MixtureScore, SequentialTest
from .srm import SequentialSRM, SrmCheckResult, SumRatioResult, chi_square_srm, sum_ratio_check

__all__ = [
    "Alert", "ArmStats", "EngineConfig", "ExperimentState", "IntervalResult", "InvalidInput", "MetricConfig",
    "MixtureScore", "Observation", "ROW_COLUMNS", "SES_COLUMNS", "SequentialSRM", "SequentialTest", "SrmCheckResult",
    "SrmStatus", "SumRatioResult", "chi_square_srm", "evaluate", "parse_observation", "parse_request",
    "parse_timestamp", "sum_ratio_check",
]

from .serialize import from_bytes, to_bytes  # noqa: E402  (needs ExperimentState)

__all__ += ["from_bytes", "to_bytes"]
