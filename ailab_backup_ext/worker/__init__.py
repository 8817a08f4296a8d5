"""The worker: backup, restore, verify and the restore preview run inside a helper container that
mounts the source and the store, on local files, with the same archive code, checks and progress
as everywhere else. No archive byte passes through the server then, and nothing is spooled in its
temp folder.

``main`` is the entry point inside the container (``python -m ailab_backup_ext.worker.main
JOB.json``); ``runner`` is the server's side: it finds a Python in the helper image, brings our
code into the created helper, starts it, relays its progress and reads its result.
"""
