# Stands in for /opt/pytorch-mnist/mnist.py of Katib's example image (bind-mounted there by the
# emulated kubelet, see tests/kubelet): it becomes trial-program, which sits next to it, with the
# same arguments. trial-program prints the metrics and records what it saw (see its doc).
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
os.execv(os.path.join(here, "trial-program"), [sys.argv[0]] + sys.argv[1:])
