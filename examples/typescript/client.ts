// A TypeScript caller of the service on the code `make clients` generates (ts-proto for
// @grpc/grpc-js): one Sync request, then the destination's dataflow.
import { credentials, Metadata } from "@grpc/grpc-js";
import {
  Dataflow,
  MarketoDestinationServiceClient,
  MembershipStatus,
  SyncRequest,
  SyncResponse,
} from "../../gen/ts/marketo_destination/v1/destination";

const client = new MarketoDestinationServiceClient(
  process.env.MARKETO_DEST_ADDRESS ?? "127.0.0.1:50051",
  credentials.createInsecure(),
);
const metadata = new Metadata();
if (process.env.MARKETO_DEST_TOKEN) {
  metadata.set("authorization", `Bearer ${process.env.MARKETO_DEST_TOKEN}`);
}

// Sends one request on a Sync stream and resolves with its answer (accepted and rejected).
export function syncOne(destinationId: string, email: string): Promise<SyncResponse> {
  const request: SyncRequest = {
    destinationId,
    requestId: "r1",
    updates: [
      {
        profileId: "p1",
        eventTime: new Date(),
        profile: { person: { email } },
        audiences: [
          { audienceId: "newsletter", status: MembershipStatus.MEMBERSHIP_STATUS_REALIZED },
        ],
        updateId: "",
      },
    ],
  };
  return new Promise((resolve, reject) => {
    const stream = client.sync(metadata);
    stream.on("data", (answer: SyncResponse) => resolve(answer));
    stream.on("error", reject);
    stream.write(request);
    stream.end();
  });
}

// The destination's dataflow: received, activated, pending.
export function dataflow(destinationId: string): Promise<Dataflow | undefined> {
  return new Promise((resolve, reject) => {
    client.getDataflow({ destinationId, hours: 0 }, metadata, (error, answer) =>
      error ? reject(error) : resolve(answer.dataflow),
    );
  });
}

export function close(): void {
  client.close();
}
