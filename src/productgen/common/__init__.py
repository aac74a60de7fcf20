"""What every stage shares: user errors, atomic writes, locks, progress bars, image grids, plots, notifications."""
