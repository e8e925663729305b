"""team-a's report job: list one S3 bucket with credentials from tokenbridge.

boto3 reads AWS_CONFIG_FILE and AWS_PROFILE; the profile's credential_process runs
tokenbridge-cred, which asks the GKE metadata server for this pod's Google ID token and
exchanges it at tokenbridge for temporary credentials. No AWS key anywhere.
"""

import os

import boto3


def main() -> None:
    session = boto3.Session()
    identity = session.client("sts").get_caller_identity()
    print(f"running as {identity['Arn']}")
    bucket = os.environ["BUCKET"]
    pages = session.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    for page in pages:
        for obj in page.get("Contents", []):
            print(f"{obj['Key']}\t{obj['Size']}")


if __name__ == "__main__":
    main()
