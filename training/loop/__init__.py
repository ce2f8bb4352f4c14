"""The training loop's parts, each small: optimizer and schedule, losses, mixed precision, distributed
set-up and loaders, run state for exact resume, validation, and the run's log and plots."""
