#!/bin/bash
# The baseline: what the AWS Security Blog walkthrough's credential_process
# script does (curl to the metadata server, jq, the aws CLI's
# assume-role-with-web-identity, jq), pointed at the same stand-ins as
# tokenbridge (GCE_METADATA_HOST, AWS_ENDPOINT_URL_STS). Used only by
# loadtest/shim-bench for the side-by-side comparison in BENCHMARKS.md.
AUDIENCE="$TOKENBRIDGE_AUDIENCE"
ROLE_ARN="$TOKENBRIDGE_ROLE_ARN"

jwt_token=$(curl -sH "Metadata-Flavor: Google" "http://${GCE_METADATA_HOST}/computeMetadata/v1/instance/service-accounts/default/identity?audience=${AUDIENCE}&format=full&licenses=FALSE")

jwt_sub=$(jq -R 'split(".") | .[1] | gsub("-";"+") | gsub("_";"/") | @base64d | fromjson' <<< "$jwt_token" | jq -r '.sub')

credentials=$(aws sts assume-role-with-web-identity --role-arn $ROLE_ARN --role-session-name $jwt_sub --web-identity-token $jwt_token | jq '.Credentials' | jq '.Version=1')

echo $credentials
