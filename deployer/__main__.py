from deployer.cli import main

if __name__ == "__main__":  # not when a spawned worker process (deployer/pipeline/worker.py) imports it
    raise SystemExit(main())
