"""The root builder: turns a request into a container tree (planner, executor, setupRoot/unsetupRoot, the job's sshd)."""
