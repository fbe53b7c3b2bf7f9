"""Stands in for main.py of Katib's TF-event metrics collector (image python:3.11-slim,
entrypoint `python main.py`, cmd/metricscollector/v1beta1/tfevent-metricscollector), which needs
TensorFlow: it takes the same flags (names and defaults of that main.py and const.py) and waits
for the trial's processes the way Katib's pns.py does — every process of the shared PID namespace
whose parent is outside it (parent pid 0), except pid 1 and itself; the main one is the process
whose command line holds `echo completed > <metrics dir>`, else the first; with
`-w true` (the default) it waits for all of them, else for the main one — then, instead of
parsing TF events and calling the DB manager, appends what it parsed and waited for to the JSON
lines file $STANDIN_RECORD and exits 0 (1 when the main process left no `completed` marker).
"""
import argparse
import json
import os
import sys
import time


def options():
    parser = argparse.ArgumentParser(description="TF-Event MetricsCollector stand-in")
    parser.add_argument("-s-db", "--db_manager_server_addr", type=str, default="")
    parser.add_argument("-t", "--trial_name", type=str, default="")
    parser.add_argument("-path", "--metrics_file_dir", type=str, default="/log")
    parser.add_argument("-m", "--metric_names", type=str, default="")
    parser.add_argument("-o-type", "--objective_type", type=str, default="")
    parser.add_argument("-f", "--metric_filters", type=str, default="")
    parser.add_argument("-p", "--poll_interval", type=int, default=1)
    parser.add_argument("-timeout", "--timeout", type=int, default=0)
    parser.add_argument("-w", "--wait_all_processes", type=str, default="True")
    return parser.parse_args()


def top_level_processes():
    """(pid, command line) of every process whose parent is outside the namespace."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (1, os.getpid()):
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                words = cmdline.read().rstrip(b"\0").replace(b"\0", b" ")
        except (OSError, ValueError, IndexError):
            continue
        if parent == 0:
            found.append((int(entry), words.decode(errors="replace")))
    return sorted(found)


def main():
    opt = options()
    wait_all = opt.wait_all_processes.lower() == "true"
    processes = top_level_processes()
    marker = f"echo completed > {opt.metrics_file_dir}"
    main_pid = next((pid for pid, cmd in processes if marker in cmd), None)
    if main_pid is None and processes:
        main_pid = processes[0][0]
    waiting = {pid for pid, _ in processes}
    completed = None
    while waiting:
        for pid in sorted(waiting):
            if os.path.exists(f"/proc/{pid}"):
                continue
            waiting.discard(pid)
            if pid == main_pid:
                try:
                    with open(os.path.join(opt.metrics_file_dir, f"{pid}.pid")) as mark:
                        completed = mark.read().strip()
                except OSError:
                    completed = ""
                if not wait_all:
                    waiting.clear()
        time.sleep(opt.poll_interval)
    record = {
        "argv": sys.argv,
        "orig_argv": sys.orig_argv,
        "options": vars(opt),
        "wait_all": wait_all,
        "waited_for": [cmd for _, cmd in processes],
        "main_process": next((cmd for pid, cmd in processes if pid == main_pid), None),
        "marker": completed,
    }
    with open(os.environ["STANDIN_RECORD"], "a") as out:
        out.write(json.dumps(record) + "\n")
    return 0 if completed == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
