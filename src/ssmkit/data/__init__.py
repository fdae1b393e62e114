"""Tasks: generators and loaders of sequence data sets, registered by name (``available_tasks()``,
``get_task(name, **options)``); see ``ssmkit.data.task`` for what a task gives."""

from ssmkit.data.adding import TRIVIAL_MSE, AddingTask, adding_problem
from ssmkit.data.copying import CopyingTask, SelectiveCopyingTask, copying_data, selective_copying_data
from ssmkit.data.induction import InductionHeadsTask, induction_heads_data
from ssmkit.data.listops import LRAListOpsTask, ListOpsTask, generate_listops
from ssmkit.data.mqar import MQARTask, mqar_data
from ssmkit.data.store import DataMissingError, data_root
from ssmkit.data.task import IGNORE_INDEX, FileTask, GeneratedTask, Task, TaskInfo, available_tasks, get_task, register_task

__all__ = [
    "TRIVIAL_MSE", "adding_problem", "AddingTask",
    "copying_data", "selective_copying_data", "CopyingTask", "SelectiveCopyingTask",
    "induction_heads_data", "InductionHeadsTask",
    "mqar_data", "MQARTask",
    "generate_listops", "ListOpsTask", "LRAListOpsTask",
    "DataMissingError", "data_root",
    "IGNORE_INDEX", "FileTask", "GeneratedTask", "Task", "TaskInfo", "available_tasks", "get_task", "register_task",
]
