"""What the config files in ``configs/`` build on: the library side of the configs.

The configs are plain files loaded by path (``--config=configs/barlow.py``), never an installed
package; they import their shared pieces from here:

* ``pretrain``: the dataset presets, the default sections (data, model, augmentation, train, eval),
  the optimizer section and the short-run markers of every ``configs/<method>.py``;
* ``evaluation``: the evaluation protocols of ``configs/eval/<task>.py``;
* ``files``: loading a config file by path (the benchmark grid and the step benchmark build the
  method configs this way).
"""
