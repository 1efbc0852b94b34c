"""`python -m rayft.cli ...`: the `rayft` command."""

from rayft.cli import main

if __name__ == "__main__":
    main()
