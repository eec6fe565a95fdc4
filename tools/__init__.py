"""Command-line tools fronted by the `interest` console command."""
