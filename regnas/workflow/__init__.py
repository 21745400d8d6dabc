"""What the commands run end to end: a build (`build`), the check of its artifacts (`check`) and the flip gate
for CI (`gate`). The Python API (`regnas.build`, `regnas.check`, `regnas.gate`) calls these."""
