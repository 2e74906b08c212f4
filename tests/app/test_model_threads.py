"""The model thread uses one torch thread while a job competes for the cores, all of them otherwise."""
from __future__ import annotations

import torch


def test_one_torch_thread_while_a_job_runs_beside_the_model(qtbot, tiny_loader):
    from app.model_host import ModelHost

    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # what the model thread starts with (as on a 2-core machine)
    host = ModelHost(tiny_loader)
    busy = {"job": False}
    host.competing_work = lambda: busy["job"]
    try:
        def threads_now(model):
            model.reader.generate("Zebra facts:", max_new_tokens=2)  # a real prediction on that thread
            return torch.get_num_threads()

        assert host.submit(threads_now).result(timeout=60) == 2
        busy["job"] = True  # e.g. a training job started in a child process
        assert host.submit(threads_now).result(timeout=60) == 1
        busy["job"] = False  # the job ended: the model gets its threads back
        assert host.submit(threads_now).result(timeout=60) == 2

        def broken():
            raise RuntimeError("the jobs database went away")

        host.competing_work = broken  # a failing check never stops a prediction
        assert host.submit(threads_now).result(timeout=60) == 2
    finally:
        host.close()
        torch.set_num_threads(saved)
