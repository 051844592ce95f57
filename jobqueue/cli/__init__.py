"""``jqctl``: the command line for jobs, queues, workers and the system."""
