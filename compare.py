"""Compare arms: ``python compare.py compare=<name> [action=run|report|plan]`` (installed as
``medmae-compare``). A thin entry point; the work is ``pipeline.compare``."""

from pipeline.compare import compare_main

if __name__ == "__main__":
    compare_main()
