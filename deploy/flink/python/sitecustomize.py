"""Runs at start-up of every Python that has deploy/flink/python on its PYTHONPATH (the TaskManager's).

In PyFlink thread mode the TaskManager JVM embeds CPython (pemja). Importing onnxruntime's native
extension from an operator thread deadlocks there: its module init calls PyGILState_Ensure,
which in pemja's operator threads finds another thread state than the current one and waits for
the GIL its own thread holds (gdb: PyInit_onnxruntime_pybind11_state -> PyGILState_Ensure ->
take_gil). Importing it here, while the interpreter initializes on its first thread, avoids it.
Only processes started with the stack's PYTHONPATH (TaskManager, `flink run` client) load it.
"""
import onnxruntime  # noqa: F401
