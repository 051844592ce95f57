"""Generated from proto/jobqueue/api/v1/*.proto by ``make proto``; do not edit by hand."""
