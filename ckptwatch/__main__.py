from ckptwatch.cli import main

main(prog_name="ckptwatch")  # `python -m ckptwatch`: the same name in usage lines and shell completion
