"""Tasks: generators and loaders of sequence data sets."""

from ssmkit.data.adding import TRIVIAL_MSE, adding_problem

__all__ = ["TRIVIAL_MSE", "adding_problem"]
