import logging

from regnas.logs import Stages


def test_stages_announce_k_of_n_with_the_minutes_their_plan_gives_them(caplog):
    stages = Stages(["train", "search", "finetune", "export", "check"], logging.getLogger("regnas.test"))
    with caplog.at_level("INFO", logger="regnas"):
        stages.start("train")  # no plan yet (epochs given): the stage alone
        stages.planned({"budget": 3600.0, "train": 1800.0, "search": 600.0, "finetune": 300.0, "export_and_check": 900.0})
        stages.start("search")
        stages.start("check")
    lines = caplog.messages
    assert lines[0] == "stage 1/5: train"
    assert lines[1].startswith("stage 2/5: search (10.0 min in the plan,") and lines[1].endswith(", 30 min from now)")  # 600+300+900 s
    assert lines[2].startswith("stage 5/5: check (7.5 min in the plan,") and lines[2].endswith(", 8 min from now)")  # half
