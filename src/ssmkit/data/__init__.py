"""Tasks: generators and loaders of sequence data sets, registered by name (``available_tasks()``,
``get_task(name, **options)``); see ``ssmkit.data.task`` for what a task gives and ``ssmkit tasks`` for the list."""

from ssmkit.data.adding import TRIVIAL_MSE, AddingTask, adding_problem
from ssmkit.data.arrays import ArraysTask, from_arrays, read_arrays
from ssmkit.data.bundled import DigitsTask, MNIST1DTask
from ssmkit.data.cifar import LRAImageTask, SCIFARTask, read_cifar_batch
from ssmkit.data.copying import CopyingTask, SelectiveCopyingTask, copying_data, selective_copying_data
from ssmkit.data.idx import PSMNISTTask, SFashionMNISTTask, SMNISTTask, read_idx
from ssmkit.data.induction import InductionHeadsTask, induction_heads_data
from ssmkit.data.listops import LRAListOpsTask, ListOpsTask, generate_listops
from ssmkit.data.lra import LRAPathfinderTask, LRAPathXTask, LRARetrievalTask, LRATextTask
from ssmkit.data.mqar import MQARTask, mqar_data
from ssmkit.data.pathfinder import PATHFINDER32, PATHX, PathfinderTask, generate_pathfinder
from ssmkit.data.sequences import ScaledSequences
from ssmkit.data.speech import SC10Task, SC35Task
from ssmkit.data.store import DataMissingError, data_root
from ssmkit.data.task import (
    IGNORE_INDEX, FileTask, GeneratedTask, Task, TaskInfo, available_tasks, get_task, register_task,
)

__all__ = [
    "IGNORE_INDEX", "FileTask", "GeneratedTask", "Task", "TaskInfo", "available_tasks", "get_task", "register_task",
    "DataMissingError", "data_root", "ScaledSequences",
    "from_arrays", "read_arrays", "ArraysTask",
    "TRIVIAL_MSE", "adding_problem", "AddingTask",
    "copying_data", "selective_copying_data", "CopyingTask", "SelectiveCopyingTask",
    "induction_heads_data", "InductionHeadsTask",
    "mqar_data", "MQARTask",
    "generate_listops", "ListOpsTask", "LRAListOpsTask",
    "MNIST1DTask", "DigitsTask",
    "read_idx", "SMNISTTask", "PSMNISTTask", "SFashionMNISTTask",
    "read_cifar_batch", "SCIFARTask", "LRAImageTask",
    "LRATextTask", "LRARetrievalTask", "LRAPathfinderTask", "LRAPathXTask",
    "SC10Task", "SC35Task",
    "PATHFINDER32", "PATHX", "PathfinderTask", "generate_pathfinder",
]
